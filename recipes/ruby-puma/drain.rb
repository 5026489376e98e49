# frozen_string_literal: true

require 'puma/plugin'
require 'socket'

# Lossless keep-alive drain for Puma under `handover run` (see README.md).
module Drain
  # DRAIN_GRACE: seconds between SIGTERM and Puma's own graceful stop.
  GRACE = Float(ENV.fetch('DRAIN_GRACE', '2'))

  class << self
    # Whether the server is stopping.
    attr_accessor :draining
  end

  # Rack middleware (config.ru): once draining, every response says
  # "Connection: close", so keep-alive clients reconnect (to the new
  # generation) instead of sending their next request into a connection
  # Puma is about to close.
  class Middleware
    def initialize(app)
      @app = app
    end

    def call(env)
      # Puma decides keep-alive from the request's Connection header once the
      # app has answered: marking it "close" makes Puma answer
      # "Connection: close" and close the connection after this response.
      env['HTTP_CONNECTION'] = 'close' if Drain.draining
      @app.call(env)
    end
  end

  # Puma plugin (`plugin :drain` in puma.rb): the first SIGTERM starts the
  # drain; Puma's own graceful stop follows DRAIN_GRACE seconds later. (Puma's
  # stop alone closes idle keep-alive connections at once: a request already
  # on its way on one would meet a closed connection.)
  class Plugin < Puma::Plugin
    def start(launcher)
      launcher.events.on_booted do
        puma_stop = Signal.trap('TERM') do
          next if Drain.draining

          Drain.draining = true
          Thread.new do
            Drain.stop_accepting(launcher.binder.ios)
            sleep Drain::GRACE
            puma_stop.call
          end
        end
      end
    end
  end

  # Stops accepting on the shared listening sockets while every connection
  # already accepted is served on. Puma has no call for that (its stop also
  # closes connections that were accepted but whose request has not been
  # read yet), so each of our descriptors of a shared socket is swapped
  # (dup2, through IO#reopen) for a private listening socket nobody connects
  # to: Puma's accept loop waits on it, and the shared socket itself stays
  # open in handover and in the new generation, which accepts from now on.
  def self.stop_accepting(listeners)
    listeners.each do |io|
      idle = UNIXServer.new("\0puma-drain-#{Process.pid}-#{io.fileno}")
      io.reopen(idle)
      idle.close
    end
  end
end

Puma::Plugins.register('drain', Drain::Plugin)
