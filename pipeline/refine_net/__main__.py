from .training import main

main()
