// An exec worker in Node.js speaking JSON lines (dataflows/README.md): enriches each
// order with its customer's name and tier from a lookup table, and the order's total
// with the tier's discount. An unknown customer is refused with an error, which the
// stage's on_error policy sends to the dead-letter topic. dataflows/enrich.toml runs it.
"use strict";
const readline = require("readline");

const CUSTOMERS = {
  c1: {name: "Ada", tier: "gold"},
  c2: {name: "Grace", tier: "silver"},
  c3: {name: "Linus", tier: "standard"},
};
const DISCOUNT = {gold: 0.1, silver: 0.05, standard: 0};

function answer(request) {
  const order = request.value;
  const customer = order && CUSTOMERS[order.customer];
  if (!customer) {
    return {id: request.id, error: `unknown customer ${JSON.stringify(order && order.customer)}`};
  }
  const total = order.quantity * order.price;
  const discount = Math.round(total * DISCOUNT[customer.tier] * 100) / 100;
  return {
    id: request.id,
    // Keyed by customer, so the output topic holds each customer's orders together.
    records: [{key: order.customer, value: {...order, customer_name: customer.name, tier: customer.tier,
                                            total, discount, to_pay: Math.round((total - discount) * 100) / 100}}],
  };
}

const lines = readline.createInterface({input: process.stdin});
lines.on("line", line => {
  process.stdout.write(JSON.stringify(answer(JSON.parse(line))) + "\n");
});
