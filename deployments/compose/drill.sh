#!/usr/bin/env bash
# A fire drill for the running Compose stack (`make drill`): break a service for real, raise
# the alert, and wait for UICI's diagnosis.
#
# 1. Starts a container on the same Docker engine that crash-loops because DATABASE_URL is
#    not set (restart policy always; the UICI image, so nothing is pulled), and waits for its
#    third restart.
# 2. Raises an alert for it. DRILL_VIA=alertmanager (default): POST /api/v2/alerts to the
#    stack's Alertmanager, which routes it to UICI's webhook with the key it reads from its
#    file, as a real rule's alert would go (a rule on container metrics would need cAdvisor,
#    and minutes). DRILL_VIA=webhook: POST an Alertmanager-shaped notification straight to
#    UICI's /webhooks/alertmanager with secrets/uici-webhook-key.
# 3. Polls GET /incidents with the reader key (secrets/uici-reader-key) until the incident is
#    diagnosed, then prints the root cause, the evidence and the actions taken.
# Exits 0 with a diagnosis, 1 when the incident fails or no diagnosis arrives within
# DRILL_TIMEOUT seconds of the alert (default 300; the message says how far it got), 2 when the
# stack is not usable.
# Its container (uici-drill-api-<unix time>, label uici.drill=1) is removed when the drill ends;
# DRILL_KEEP=1 keeps it. UICI_API_URL and ALERTMANAGER_URL override where they are found.
# Needs: docker, curl, python3 (JSON).
set -euo pipefail
cd "$(dirname "$0")"

timeout=${DRILL_TIMEOUT:-300}
via=${DRILL_VIA:-alertmanager}
env_file=.env
die() { echo "drill: $*" >&2; exit 2; }
[ -f "$env_file" ] || die "no $(pwd)/.env: bring the stack up first (make stack)"
setting() { sed -n "s/^$1=//p" "$env_file" | tail -n 1; }
for tool in docker curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
case "$via" in alertmanager | webhook) ;; *) die "DRILL_VIA must be alertmanager or webhook, not '$via'" ;; esac

bind=$(setting UICI_BIND_ADDRESS)
bind=${bind:-127.0.0.1}
published=$(./stack.sh compose port --index=1 uici-api 8080 2>/dev/null | tail -n 1) || true
api=${UICI_API_URL:-http://${published:-$bind:8080}}
alertmanager=${ALERTMANAGER_URL:-http://$bind:$(setting ALERTMANAGER_PORT)}
prefect_ui=$(setting UICI_PREFECT_UI_URL)
image=${UICI_IMAGE:-$(setting UICI_IMAGE)}
[ -s secrets/uici-reader-key ] || die "secrets/uici-reader-key is missing (deployments/compose/secrets.sh)"
reader_key=$(cat secrets/uici-reader-key)

curl -fsS --max-time 5 "$api/health/ready" >/dev/null 2>&1 \
    || die "UICI does not answer at $api/health/ready: start the stack (make stack)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $reader_key" "$api/incidents?limit=1")
[ "$code" = 200 ] || die "GET $api/incidents with secrets/uici-reader-key answered $code (is UICI_READER_KEY_SHA256 in .env its hash? run: ./stack.sh up)"

# --- 1. the broken service ----------------------------------------------------------------------
started=$(date +%s)
service="uici-drill-api-$started"
cleanup() {
    if [ "${DRILL_KEEP:-0}" = 1 ]; then
        echo "drill: kept $service; remove it with: docker rm -f $service"
    else
        docker rm -f "$service" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
# shellcheck disable=SC2016  # $DATABASE_URL is the container's, not ours
script='echo "INFO starting orders-api 1.4.2"; if [ -z "$DATABASE_URL" ]; then echo "FATAL: required environment variable DATABASE_URL is not set" >&2; exit 1; fi; exec sleep 3600'
docker run -d --name "$service" --label uici.drill=1 --restart always --network none \
    --memory 64m --no-healthcheck --entrypoint /bin/sh "$image" -c "$script" >/dev/null
echo "drill: started $service, which crash-loops on a missing DATABASE_URL"
for _ in $(seq 1 60); do
    restarts=$(docker inspect -f '{{.RestartCount}}' "$service")
    [ "$restarts" -ge 3 ] && break
    sleep 1
done
echo "drill: $service has restarted $restarts times"

# --- 2. the alert ---------------------------------------------------------------------------------
stamp=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
alert=$(SERVICE="$service" STAMP="$stamp" python3 -c '
import json, os
print(json.dumps({
    "status": "firing",
    "labels": {"alertname": "ServiceCrashLooping", "service": os.environ["SERVICE"],
               "severity": "critical", "uici_env": "local-docker"},
    "annotations": {"summary": os.environ["SERVICE"] + " keeps restarting",
                    "description": "fire drill (deployments/compose/drill.sh)"},
    "startsAt": os.environ["STAMP"], "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "",
}))')
if [ "$via" = alertmanager ]; then
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
        --data "[$alert]" "$alertmanager/api/v2/alerts")
    [ "$code" = 200 ] || die "Alertmanager at $alertmanager answered $code to POST /api/v2/alerts"
    echo "drill: alert ServiceCrashLooping sent to Alertmanager ($alertmanager); it routes it to UICI"
else
    [ -s secrets/uici-webhook-key ] || die "secrets/uici-webhook-key is missing"
    body=$(ALERT="$alert" python3 -c '
import json, os
alert = json.loads(os.environ["ALERT"])
print(json.dumps({"version": "4", "status": "firing", "receiver": "uici", "groupKey": "drill",
                  "groupLabels": {}, "commonLabels": alert["labels"], "commonAnnotations": {},
                  "externalURL": "", "truncatedAlerts": 0, "alerts": [alert]}))')
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H 'Content-Type: application/json' \
        -H "Authorization: Bearer $(cat secrets/uici-webhook-key)" --data "$body" "$api/webhooks/alertmanager")
    [ "$code" = 202 ] || die "UICI's webhook answered $code (expected 202)"
    echo "drill: alert ServiceCrashLooping posted to UICI's webhook ($api/webhooks/alertmanager)"
fi

# --- 3. the diagnosis -------------------------------------------------------------------------------
# Prints "ID STATUS" of the newest incident of the service, or nothing.
newest() {
    curl -fsS --max-time 10 -H "Authorization: Bearer $reader_key" \
        "$api/incidents?service=$service&since=$((started - 60))&limit=1" | python3 -c '
import json, sys
found = json.load(sys.stdin)
if found:
    print(found[0]["id"], found[0]["status"])'
}
# The wait counts from the alert; the incident is looked for at least once.
alerted=$(date +%s)
deadline=$((alerted + timeout))
incident="" status="" said=""
while :; do
    read -r incident status < <(newest || true) || true
    if [ -n "$incident" ] && [ "$said" != "$status" ]; then
        echo "drill: incident $incident is $status ($(($(date +%s) - alerted)) s after the alert)"
        said=$status
    fi
    case "$status" in
        diagnosed | resolved | escalated | failed) break ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || break
    sleep 2
done

case "$status" in
    diagnosed | resolved | escalated | failed) ;;
    "")
        echo "drill: no incident for $service within $timeout s. The alert did not reach UICI:" \
            "see ./stack.sh compose logs alertmanager uici-api (401: the webhook key in" \
            "secrets/ does not match UICI_WEBHOOK_KEY_SHA256)" >&2
        exit 1 ;;
    *)
        echo "drill: incident $incident is still $status after $timeout s: its diagnosis did not" \
            "finish. See ./stack.sh compose logs uici-worker uici-deploy and the Prefect UI" \
            "($prefect_ui)" >&2
        exit 1 ;;
esac

read -r -d '' print_report <<'PY' || true
import json, os, sys
incident = json.load(sys.stdin)
report = incident.get("report") or {}
diagnosis = report.get("diagnosis") or {}
print("=" * 78)
print(f"incident {incident['id']}: {incident['status']} "
      f"({incident['service']} on {incident['environment']})")
print(f"  root cause: {diagnosis.get('root_cause') or incident.get('root_cause')}")
if diagnosis:
    rules = ", ".join(diagnosis.get("rules_matched") or [])
    print(f"  category: {diagnosis.get('category')}, confidence {diagnosis.get('confidence')}"
          + (f", rules: {rules}" if rules else ""))
observations = {o.get("id"): o for o in report.get("observations") or []}
for observation_id in diagnosis.get("evidence") or []:
    observation = observations.get(observation_id) or {}
    lines = [x for x in (observation.get("output") or "").strip().splitlines() if x.strip()]
    words = ("fatal", "error", "not set", "exit")
    telling = [x for x in lines if any(w in x.lower() for w in words)] or lines[-1:]
    shown = " | ".join(dict.fromkeys(telling[:2]))
    print(f"  evidence {observation_id} ({observation.get('operation')}): {shown}")
for action in report.get("actions") or []:
    print(f"  action: {action.get('step')}: {action.get('outcome')} ({action.get('policy')})")
ui = os.environ.get("PREFECT_UI", "").rstrip("/")
if incident.get("flow_run_id") and ui:
    print(f"  flow run: {ui}/runs/flow-run/{incident['flow_run_id']}")
print("=" * 78)
sys.exit(1 if incident["status"] == "failed" else 0)
PY
curl -fsS --max-time 10 -H "Authorization: Bearer $reader_key" "$api/incidents/$incident" \
    | PREFECT_UI="$prefect_ui" python3 -c "$print_report"
echo "drill: done in $(($(date +%s) - started)) s"
