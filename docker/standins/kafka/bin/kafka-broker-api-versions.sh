#!/bin/bash
# As in the real image: list the API versions a broker supports (used as the compose healthcheck).
exec /opt/kafka/bin/java.sh org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
