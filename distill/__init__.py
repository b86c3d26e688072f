"""Training side: segmentation models, knowledge-distillation losses and the Accelerate trainer."""
