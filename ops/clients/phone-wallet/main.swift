print("phone-wallet: not built yet")
