#!/bin/sh
# A helm post-renderer for the node tests (tests/node.rs): the chart's Pods on the host's network,
# the only one that reaches the tests' loopback services. The chart has no such value, so this
# adds `hostNetwork: true` to the Pod spec, and makes the controller listen on the Pod's IP
# (status.podIP: its node's own address) instead of every address, as Pods on several nodes here
# share one network namespace. Everything else (probes, security context) is the chart's.
exec sed \
  -e 's/^      serviceAccountName:/      hostNetwork: true\n&/' \
  -e 's/^            - name: POD_NAME$/            - name: POD_IP\n              valueFrom:\n                fieldRef:\n                  fieldPath: status.podIP\n&/' \
  -e 's/^\(              value: \)"0\.0\.0\.0:\([0-9]*\)"$/\1"$(POD_IP):\2"/'
