"""Using trained models: predictions on image files and the recorded validation predictions."""
