"""The visual-odometry core, ROS-free: frames in order -> metric depth, relative pose, odometry, covariance.

``pipeline.Pipeline`` runs one camera's frames through the stages below, in this order:

- the network's step (``network``): the depth of the frame and the pose net's motion over the window;
- scale (``sfm_ros.scale``): metres per network unit from the camera's height over the ground;
- tracking (``tracking``): the photometric alignment (``align``) of the frame to the keyframe or to the previous
  frame, the keyframe's renewal, and the retry from standstill;
- the ground's step length (``ground``): each step's length measured on the ground alone, and the ground plane's
  tilt from the direction of travel;
- uncertainty (``uncertainty``): the pose's covariance and the twist.

Import the modules themselves (``from sfm_ros.odometry.pipeline import Pipeline``): this package's ``__init__``
imports nothing, so code that only needs ``Estimate`` (``sfm_ros.ros_io``) does not load the run time.
"""
