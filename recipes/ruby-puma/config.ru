# frozen_string_literal: true

require_relative 'drain'

use Drain::Middleware
# The application (a Rails or Sinatra app works the same).
run ->(_env) { [200, { 'Content-Type' => 'text/plain' }, ["pid=#{Process.pid}\n"]] }
