"""mammoray: breast-mass segmentation experiments on mammograms, built on Ray.

The design card calls this package ``platform``; that name is a standard-library module that
Ray and TensorFlow import, so the core lives here instead.
"""

__version__ = "0.1.0"
