"""What every service worker shares: its Faust app, the one publish path, the agent loop,
tables of msgspec structs and commands with acknowledgment. Services import from here;
nothing here imports a service."""
