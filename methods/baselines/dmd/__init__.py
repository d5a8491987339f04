"""Distribution Matching Distillation, DMD (arXiv 2311.18828) and DMD2 (arXiv 2405.14867): losses and the GAN head."""
