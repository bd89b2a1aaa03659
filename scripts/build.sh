#!/usr/bin/env bash
# colcon build of vlm_perception into install/ (symlinked, so edits to Python files show at once).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
set +u; source .venv/bin/activate; set -u
for candidate in ${ROS_DISTRO:+/opt/ros/$ROS_DISTRO/setup.bash} /opt/ros/*/setup.bash; do
  # shellcheck disable=SC1090
  if [ -f "$candidate" ]; then set +u; source "$candidate"; set -u; break; fi
done
colcon build --symlink-install --event-handlers console_direct+ \
  --cmake-args -DPython3_EXECUTABLE="$VIRTUAL_ENV/bin/python" -DBUILD_TESTING=OFF
