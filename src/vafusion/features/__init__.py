"""Feature stage: per-frame MFCC, VGGish and IResNet-50 features cached in HDF5."""
