"""Example stack configurations (`Pulumi.<stack>.yaml`), shipped so a wheel can synthesize them."""
