"""Test-wide settings: keep DDS traffic on loopback, in a domain of this run's own."""

import os
import random

# Set before any test imports rclpy, and inherited by every process a test starts.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
if 'VLM_PERCEPTION_TEST_DOMAIN' not in os.environ:
    os.environ['VLM_PERCEPTION_TEST_DOMAIN'] = str(random.SystemRandom().randint(1, 101))
os.environ['ROS_DOMAIN_ID'] = os.environ['VLM_PERCEPTION_TEST_DOMAIN']

# --- model fixtures (CORE) ---
