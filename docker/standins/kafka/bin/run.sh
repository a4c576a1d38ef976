#!/bin/bash
# Map KAFKA_* variables onto server.properties as the apache/kafka image does (KAFKA_NODE_ID -> node.id;
# "___" -> "-", "__" -> "_", "_" -> "."), format KRaft storage with CLUSTER_ID once, run the broker.
set -euo pipefail
config=/opt/kafka/config/server.properties
: >"$config"
while IFS='=' read -r name value; do
    case $name in
    KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_JVM_PERFORMANCE_OPTS) continue ;;
    KAFKA_*)
        key=$(echo "${name#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
        echo "$key=$value" >>"$config"
        ;;
    esac
done < <(env)
log_dirs=$(sed -n 's/^log\.dirs=//p' "$config")
if [ ! -f "${log_dirs:-/tmp/kraft-combined-logs}/meta.properties" ]; then
    /opt/kafka/bin/java.sh kafka.tools.StorageTool format --config "$config" --cluster-id="${CLUSTER_ID:?}" >/dev/null
fi
exec /opt/kafka/bin/java.sh kafka.Kafka "$config"
