#!/usr/bin/env bash
# Regenerates the broken files of this corpus from the valid test configuration (../config)
# after that configuration changes. Each case changes one thing (or, for several-files, one
# thing in each of three files). expected.txt holds the exact problems the loader must report;
# review its diff by hand after regenerating (see tests/test_config_loader.py).
set -euo pipefail
cd "$(dirname "$0")"
B=../config
mk() { mkdir -p "$1"; }
mk malformed-yaml; sed 's/^  port: 8080/  port: 8080\n   host2: [unclosed/' $B/platform.yml > malformed-yaml/platform.yml
mk unknown-key; sed 's/^service:/servce:/' $B/platform.yml > unknown-key/platform.yml
mk wrong-type; sed 's/^  port: 8080/  port: eighty/' $B/platform.yml > wrong-type/platform.yml
mk missing-key; sed '/^storage:/,/^  url:/d' $B/platform.yml > missing-key/platform.yml
mk unset-env-var; sed 's/^  api_key: .*/  api_key: ${UICI_TEST_SURELY_UNSET_KEY}/; s/^  provider: none/  provider: openai/; s/^  model: ""/  model: test-model/' $B/platform.yml > unset-env-var/platform.yml
mk duplicate-key; sed 's/^  port: 8080/  port: 8080\n  port: 9090/' $B/platform.yml > duplicate-key/platform.yml
mk unknown-default-environment; sed 's/default_environment: test-docker/default_environment: prod/' $B/platform.yml > unknown-default-environment/platform.yml
mk translation-unknown-operation; sed 's/^    restart_service:/    restart_servise:/' $B/command_translations.yml > translation-unknown-operation/command_translations.yml
mk environment-type-without-translations; cp $B/environments.yml environment-type-without-translations/environments.yml
cat >> environment-type-without-translations/environments.yml <<'YAML'
  k8s:
    type: kubernetes
    enabled: false
    description: a cluster
    connection:
      in_cluster: true
      namespace: default
      allowed_namespaces: [default]
      target_selectors: ["app={target}"]
      request_timeout_seconds: 5
      read_retries: 2
      retry_backoff_seconds: 0.5
      retry_after_cap_seconds: 10
      connect_retries: 2
      min_replicas: 1
      max_replicas: 10
      probe_event_window_seconds: 600
YAML
mk runbook-unknown-operation; sed 's/        - operation: get_logs/        - operation: get_logz/' $B/agents.yml > runbook-unknown-operation/agents.yml
mk runbook-invalid-params; sed 's/          params: {lines: 50}/          params: {lines: 0, colour: red, level: fatal}/' $B/agents.yml > runbook-invalid-params/agents.yml
mk operation-without-translation; sed '/^    restart_service:/,/^      command: \[docker, restart/d' $B/command_translations.yml > operation-without-translation/command_translations.yml
mk placeholder-unknown; sed 's/"{lines}"/"{lnes}"/' $B/command_translations.yml > placeholder-unknown/command_translations.yml
mk placeholder-optional; sed 's/{when: since, argv: \[--since, "{since}"\]}/--since, "{since}"/' $B/command_translations.yml > placeholder-optional/command_translations.yml
mk bad-regex; sed "s/'panic'/'panic(['/" $B/agents.yml > bad-regex/agents.yml
mk inconsistent-policy; sed 's/^  approval_required: \[write\]/  approval_required: [write, destructive]/' $B/environments.yml > inconsistent-policy/environments.yml
mk empty-file; printf '# nothing here\n' > empty-file/operations.yml
mk boolean-key; sed 's/^  level: INFO/  level: INFO\n  on: true/' $B/platform.yml > boolean-key/platform.yml
mk several-files; sed 's/^  port: 8080/  port: 70000/' $B/platform.yml > several-files/platform.yml
sed 's/    timeout_seconds: 5$/    timeout_seconds: 0/' $B/environments.yml > several-files/environments.yml
sed 's/^  planner_mode: runbook/  planner_mode: smart/' $B/agents.yml > several-files/agents.yml
mk llm-without-key; sed 's/^  provider: none/  provider: openai/; s/^  model: ""/  model: test-model/' $B/platform.yml > llm-without-key/platform.yml
mk default-out-of-bounds; sed 's/        default: 100$/        default: 5000/' $B/operations.yml > default-out-of-bounds/operations.yml
mk unknown-environment-type; sed 's/^    type: docker$/    type: dockr/' $B/environments.yml > unknown-environment-type/environments.yml
mk unknown-connection-key; sed 's|^      base_url: unix:///var/run/docker.sock|      base_url: unix:///var/run/docker.sock\n      socket: /tmp/x|' $B/environments.yml > unknown-connection-key/environments.yml
mk auto-approve-read; sed 's/    auto_approve: \[restart_service\]/    auto_approve: [get_logs]/' $B/agents.yml > auto-approve-read/agents.yml
mk translation-for-unsupported-type; sed 's/^    restart_service:$/    scale_service:\n      method: scale\n      command: [docker, scale]\n    restart_service:/' $B/command_translations.yml > translation-for-unsupported-type/command_translations.yml
mk level-without-pattern; sed 's/        enum: \[error, warning\]/        enum: [error, warning, verbose]/' $B/operations.yml > level-without-pattern/operations.yml
mk bad-redaction-pattern; sed "s/      pattern: 'hunter2'/      pattern: 'hunter(2'/" $B/agents.yml > bad-redaction-pattern/agents.yml
# every case must differ from the base
for d in */; do
  for f in "$d"*.yml; do cmp -s "$B/$(basename "$f")" "$f" && { echo "unchanged: $f" >&2; exit 1; }; done
done
echo "regenerated $(ls -d */ | wc -l) cases"
