#!/bin/sh
# Grafana's entrypoint under compose: an admin account exists only when GRAFANA_ADMIN_PASSWORD
# is set and not empty. Otherwise Grafana creates none (disable_initial_admin_creation), so
# there is no default credential to guess; anonymous visitors can view, never edit.
if [ -n "${GRAFANA_ADMIN_PASSWORD:-}" ]; then
  GF_SECURITY_ADMIN_PASSWORD="$GRAFANA_ADMIN_PASSWORD"
  GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION=false
else
  unset GF_SECURITY_ADMIN_PASSWORD
  GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION=true
fi
unset GRAFANA_ADMIN_PASSWORD
export GF_SECURITY_ADMIN_PASSWORD GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION
exec "${GRAFANA_RUN:-/run.sh}" "$@"
