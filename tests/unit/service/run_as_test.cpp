#include <catch2/catch.hpp>

#include "runner/service/run_as.hpp"

using namespace kiln::service;

TEST_CASE("user: root becomes the jobs' user, the user itself has nothing to do, others cannot") {
    CHECK(plan_user_switch(0, 998) == user_switch::become);
    CHECK(plan_user_switch(998, 998) == user_switch::none);
    CHECK(plan_user_switch(0, 0) == user_switch::none);       // user = "root"
    CHECK(plan_user_switch(1000, 998) == user_switch::refuse);  // another user cannot switch
    CHECK(plan_user_switch(1000, 0) == user_switch::refuse);    // nor regain root
}
