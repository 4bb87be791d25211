"""VLM2Vec encoder, backbone registry and the offline tiny checkpoints."""
