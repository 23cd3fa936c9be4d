"""What SoFT costs to train and what its exits buy at decoding time (the measurements of `sortednet.bench`)."""
