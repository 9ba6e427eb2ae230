"""Business rules of EDPO: aggregates that take state and a message and return messages.

Nothing here imports faust, Kafka or the Camunda client or reads the clock; the agents
decode, call these rules, store the mutated state and send what was returned.
"""
