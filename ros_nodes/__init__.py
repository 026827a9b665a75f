"""Robot side: record ROS 2 topics into rosbag2 bags and hand each finished split to the uploader."""
