# Prepare what the test suite talks to or drives, if missing.
# Each step is idempotent; a missing prerequisite is an error, never a silent skip.

ensure_services() {
  # Headless Chromium renders the evidence HTML report (tests/test_evidence.py).
  if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
}
