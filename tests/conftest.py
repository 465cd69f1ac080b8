"""Session-wide settings. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is first
imported; set here, before any test module can import it, so the local test cluster stays on
127.0.0.1."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
