#!/usr/bin/env bash
# Screenshot of a generated results page in headless Chromium (Debian: apt-get install
# chromium), to look at it without a browser:
#   scripts/screenshot.sh report.html report.png [WIDTH] [HEIGHT]
set -euo pipefail
page=${1:?usage: scripts/screenshot.sh PAGE.html OUT.png [WIDTH] [HEIGHT]}
out=${2:?usage: scripts/screenshot.sh PAGE.html OUT.png [WIDTH] [HEIGHT]}
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
  echo "no Chromium found: apt-get install chromium" >&2
  exit 2
fi
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
  --window-size="${3:-1200},${4:-6000}" --screenshot="$(realpath -m "$out")" \
  "file://$(realpath "$page")" 2>/dev/null
echo "wrote $out"
