# frozen_string_literal: true

# Puma settings for zero-downtime reloads under `handover run`.
# See README.md for why each one is here.
require_relative 'drain'

# Serve the socket handover passes (LISTEN_FDS) and bind nothing else...
bind_to_activated_sockets 'only'
# ...but name the same address, so that a Puma restart of its own (SIGUSR2,
# which drops LISTEN_FDS) finds the socket it inherited instead of binding
# tcp://0.0.0.0:9292. Reload with `handover reload`, not SIGUSR2.
bind "tcp://#{ENV.fetch('HOST', '127.0.0.1')}:#{ENV.fetch('PORT', '8080')}"

# Single mode: handover is the supervisor; one Puma process per generation.
workers 0
threads 4, 4

# READY=1 comes from Puma's systemd plugin (the sd_notify gem: Debian's
# ruby-sd-notify) once Puma has booted: nothing to configure.

# SIGTERM: "Connection: close" for DRAIN_GRACE seconds, then Puma's graceful
# stop (drain.rb). The plugin calls Puma's own SIGTERM handler, which must not
# raise.
plugin :drain
raise_exception_on_sigterm false
