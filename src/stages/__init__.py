"""The stages of a round, one module each; each goes through `Experiment.run_stage`."""
