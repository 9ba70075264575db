"""videoft: fine-tune Kinetics-pretrained 3D CNNs on labelled video clips."""
__version__ = "0.1.0"
