"""Reading the competition folders: layout, validation, relabelling, image decoding."""
