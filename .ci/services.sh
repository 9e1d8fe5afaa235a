# Start the loopback servers the test suite talks to, if they are not running.
# Each function is idempotent; a missing server is an error, never a silent skip.

ensure_services() {
  :  # The blueprint core needs no server yet; later suites add PostgreSQL and Mosquitto here.
}
