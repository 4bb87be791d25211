"""The stages of a round, one module each; each declares its step (src/experiment/step.py), run by `Experiment.run_step`."""
