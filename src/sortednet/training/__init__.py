"""The training stack: everything that needs Lightning (the LightningModule, the DataModule, callbacks, FSDP2
strategies, checkpoint writing, loggers, rank watching) and the training config's composition and checks. The
core, inference and evaluation never import it."""
