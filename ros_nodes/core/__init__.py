"""The ROS-free recording core: every source (rclpy node, simulator, folder watcher) feeds it."""
