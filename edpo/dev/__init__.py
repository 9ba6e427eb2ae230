"""Developer tooling, not part of any service: the local server supervisor (`edpo infra`,
`edpo up`), the demo and the benchmark. The services never import from here."""
