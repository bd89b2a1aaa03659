"""
Offline runs over rosbag2 recordings (MCAP or sqlite3), without ROS: through rosbags.

Modules: settings (what a run reads and runs), typestore (message types: a ROS 2 store of
rosbags, this package's msg/ and vision_msgs' where installed, and a message factory over
them), topics (which topics are read and written), reader (an input bag, with clear errors),
writer (an output bag written in order of bag time), pairing (images held until their depth
image is read), run (the engine over every image of a bag), shapes (a seeded shapes-world
recording) and command (the ``bag`` and ``bag-shapes`` subcommands). The messages' layouts are
the node's: vlm_perception.core.message_layout. Nothing here imports rclpy; rosbags is
imported by the modules that read or write bags, not by this package or the command's
registration.
"""
