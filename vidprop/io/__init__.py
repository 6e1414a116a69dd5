"""Data stage: frame sources (image folders, video files, DAVIS), resizing, prefetch and mask I/O."""
