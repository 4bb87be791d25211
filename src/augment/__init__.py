"""Foundation-model caption augmentation: new modification texts for mined hard negatives."""
