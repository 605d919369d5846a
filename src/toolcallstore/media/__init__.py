"""Media generation: images and video from six providers behind one adapter (base.py)."""
