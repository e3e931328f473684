"""From a composed config to what the core trains: the schema, the builder, the protocols, the
learning-rate schedules and the backprop baseline. The only part of ffrun that reads omegaconf."""
