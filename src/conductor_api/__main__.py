from conductor_api.cli import main

main()
