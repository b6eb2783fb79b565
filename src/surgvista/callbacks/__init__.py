"""Lightning callbacks (``conf/callbacks``)."""
