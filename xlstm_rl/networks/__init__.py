"""Actor-critic networks: observation encoders, action / value heads, the recurrent ActorCritic."""
from .actor_critic import ActorCritic, Torso
from .encoders import (CNNEncoder, CompositeEncoder, MLPEncoder, OneHotEncoder, build_encoder,
                       is_image, obs_to_torch)
from .heads import (ActionHead, CategoricalHead, GaussianHead, MultiCategoricalHead, ValueHead,
                    build_action_head, layer_init)

__all__ = ["ActionHead", "ActorCritic", "CNNEncoder", "CategoricalHead", "CompositeEncoder",
           "GaussianHead", "MLPEncoder", "MultiCategoricalHead", "OneHotEncoder", "Torso",
           "ValueHead", "build_action_head", "build_encoder", "is_image", "layer_init",
           "obs_to_torch"]
