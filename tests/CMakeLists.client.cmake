# Tests of the C++ client (client/cpp); include()d from tests/CMakeLists.txt.
include(GoogleTest)

# The golden cases live next to the checkout: <repo>/../shared/golden/cases. Relative to this file so the
# path is right whichever top-level CMakeLists includes it.
get_filename_component(NT_GOLDEN_CASES_DIR "${CMAKE_CURRENT_LIST_DIR}/../../shared/golden/cases" ABSOLUTE)

add_executable(client_npy_test ${CMAKE_CURRENT_LIST_DIR}/client_npy_test.cc)
target_link_libraries(client_npy_test PRIVATE nt_npy GTest::gtest_main)
gtest_discover_tests(client_npy_test DISCOVERY_TIMEOUT 60)

add_executable(client_arch_json_test ${CMAKE_CURRENT_LIST_DIR}/client_arch_json_test.cc)
target_link_libraries(client_arch_json_test PRIVATE nt_client GTest::gtest_main)
target_compile_definitions(client_arch_json_test PRIVATE NT_GOLDEN_DIR="${NT_GOLDEN_CASES_DIR}")
gtest_discover_tests(client_arch_json_test DISCOVERY_TIMEOUT 60)

# KernelAssembler and KernelClient against an in-process fake KernelService.
add_executable(client_kernel_client_test ${CMAKE_CURRENT_LIST_DIR}/client_kernel_client_test.cc)
target_link_libraries(client_kernel_client_test PRIVATE nt_client GTest::gtest_main)
gtest_discover_tests(client_kernel_client_test DISCOVERY_TIMEOUT 60)

# KernelClient against real nt-server processes: one kernel over several servers, faults, uploads, tokens, TLS.
add_executable(client_cluster_test ${CMAKE_CURRENT_LIST_DIR}/client_cluster_test.cc)
target_link_libraries(client_cluster_test PRIVATE nt_client GTest::gtest_main)
target_compile_definitions(client_cluster_test PRIVATE NT_SERVER_BIN="$<TARGET_FILE:nt-server>"
                                                       NT_CLI_BIN="$<TARGET_FILE:nt>")
add_dependencies(client_cluster_test nt-server nt)
gtest_discover_tests(client_cluster_test DISCOVERY_TIMEOUT 60 PROPERTIES TIMEOUT 300)
