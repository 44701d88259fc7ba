# kiln_test_support: the in-process HTTP(S) server, coroutine test driver and TLS test material,
# shared by tests/ and bench/. Included from both; defined once.
include_guard(GLOBAL)

file(GLOB kiln_test_support_sources CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/tests/support/*.cpp)
add_library(kiln_test_support STATIC ${kiln_test_support_sources})
target_include_directories(kiln_test_support PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(kiln_test_support PUBLIC kiln_net kiln_asio PRIVATE kiln_warnings)
target_compile_definitions(kiln_test_support PRIVATE
  KILN_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
  KILN_TEST_CERTS_DIR="${PROJECT_BINARY_DIR}/test-certs")
