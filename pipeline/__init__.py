"""crowdseg: build image-segmentation datasets from crowdsourced annotations."""

__version__ = "0.1.0"
