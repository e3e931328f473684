# Importing the config package (Hydra does, to find these YAML files) registers the typed schema
# that config.yaml and the protocol options name in their defaults lists.
from ffrun.experiment.schema import register_configs

register_configs()
