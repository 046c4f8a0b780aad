"""Model code: shared names, preprocessing and the caption model."""
