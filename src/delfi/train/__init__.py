"""Training: losses, data and (later) one LightningModule per method."""
