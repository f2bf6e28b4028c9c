"""pose3d operators: 2D keypoints, person-of-interest tracking, per-frame init, bundle adjustment, loss filter, samples."""
