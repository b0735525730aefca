"""What only training does: augmentation drawn in the loader and applied on the device, the engines' batch
preparation, checkpoints of the best model and of the run."""
